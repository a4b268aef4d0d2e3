"""The bundled AlexNet trainer (two-tower model, training loop, evaluation)."""
