"""Benchmark fixtures in the real on-disk layouts (LLaVA-1.5 eval folders, Video-LLaVA QA folders, lmms-eval
parquet datasets), made by the tests with real scikit-image photos where images are needed. One module per
benchmark family; each `make_<bench>(root) -> Path` returns the data dir."""
