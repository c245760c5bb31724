"""distillation-guards core library: a calibration knob for LLM distillability.

Everything real lives here and knows nothing of Kubeflow; components and the CLI are thin wrappers.
"""

__version__ = "0.1.0"
