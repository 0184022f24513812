"""labgpu-doctor, the workspace self-check. It ships inside the workspace image (the image
copies this package and ``labgpu/__init__.py``, nothing else), so it imports nothing else of
labgpu: tests/unit/test_doctor_isolation.py proves it."""
