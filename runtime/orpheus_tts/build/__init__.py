"""The engine build (`build-engine`) and what serves and checks its output: hub, calibration, manifest, doctor."""
