"""diagnose: why does distillation from this teacher fail (or work)? prep -> diagnose -> report.

Measures the distillation traps of a teacher/student pair (tail noise, off-policy instability, the teacher-student
gap, wrong-trace preference) and the student's symptoms, and renders the JSON/HTML report in the Kubeflow UI.
"""

# No `from __future__ import annotations`: kfp reads the real annotations of pipeline signatures.
from kfp import dsl

from components.diagnose.component import diagnose
from components.pin.component import pin_models
from components.prep.component import prep
from pipelines._k8s import cached, on_gpu, with_store
from pipelines.calibrate import INFRA


# fmt: off
@dsl.pipeline(name="dguard-diagnose", description="Measure the distillation traps of a teacher/student pair.")
def diagnose_pipeline(
    teacher: str = "zoo:teacher",
    student: str = "zoo:student-gpt2",
    task: str = "synthetic_math",
    source: str = "synthetic",
    data_seed: int = 0,
    prep_options: dict = {},  # noqa: B006 - KFP takes literal defaults
    limit: int = 32,
    diagnose_options: dict = {},  # noqa: B006
    store_root: str = INFRA["store_root"],
    s3_secret: str = INFRA["s3_secret"],
    env_config_map: str = INFRA["env_config_map"],
    image: str = INFRA["image"],
    accelerator_type: str = INFRA["accelerator_type"],
    gpu_image: str = INFRA["gpu_image"],
    accelerator_count: int = INFRA["accelerator_count"],
    gpu_node_selector: dict = {},  # noqa: B006
    gpu_tolerations: list = [],  # noqa: B006
) -> str:
    pinned = cached(with_store(pin_models(teacher=teacher, proxies=[], student=student, store_root=store_root),
                               s3_secret, env_config_map, image), False)
    data = cached(with_store(prep(task=task, source=source, seed=data_seed, options=prep_options,
                                  store_root=store_root), s3_secret, env_config_map, image), False)
    d = diagnose(teacher=pinned.outputs["teacher"], student=pinned.outputs["student"], dataset=data.outputs["Output"], limit=limit,
                 options=diagnose_options, store_root=store_root)
    cached(on_gpu(with_store(d, s3_secret, env_config_map, image), accelerator_type, accelerator_count,
                  gpu_node_selector, gpu_tolerations, gpu_image))
    return d.outputs["Output"]
# fmt: on

PIPELINE = diagnose_pipeline
