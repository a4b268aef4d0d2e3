"""A Source whose worker process dies (like an OOM kill) the first time it reads one item."""

import os

from imgprep.sources import Source


class CrashingSource(Source):
    def __init__(self, root, archives=None, crash_ref="", marker=""):
        super().__init__(root, archives)
        self.crash_ref, self.marker = crash_ref, marker

    def __getstate__(self):
        return {**super().__getstate__(), "crash_ref": self.crash_ref, "marker": self.marker}

    def __setstate__(self, state):
        self.__init__(state["root"], state["archives"], state["crash_ref"], state["marker"])

    def read(self, item, **kw):
        if item.ref == self.crash_ref and not os.path.exists(self.marker):
            open(self.marker, "w").close()
            os._exit(9)  # the process vanishes mid-unit, leaving a partial shard
        return super().read(item, **kw)
