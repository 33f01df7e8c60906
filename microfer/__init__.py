"""microfer: micro-expression recognition research toolkit.

`microfer.recognise.predict(clip, model=BUNDLE)` gives the emotion of one clip; the stages are
modules named after them (datasets, video, face, apex, motion, prepare, features,
classify, evaluate, report, bundle, predict).
"""
__version__ = "0.1.0"


def __getattr__(name):
    # imported on first use so `import microfer` stays light (no torch, no dlib)
    if name == "predict":
        import importlib

        return importlib.import_module("microfer.recognise.predict")
    raise AttributeError(f"module 'microfer' has no attribute {name!r}")
