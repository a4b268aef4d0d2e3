"""The `imgprep` command line: thin click commands over the `imgprep` and `trainer` libraries."""
