"""diagnose: why does distillation from this teacher fail (or work)? prep -> diagnose -> report.

Measures the distillation traps of a teacher/student pair (tail noise, off-policy instability, the teacher-student
gap, wrong-trace preference) and the student's symptoms, and renders the JSON/HTML report in the Kubeflow UI.
"""

# No `from __future__ import annotations`: kfp reads the real annotations of pipeline signatures.
from kfp import dsl

from components.diagnose.component import diagnose
from components.pin.component import pin_models
from components.prep.component import prep
from pipelines._k8s import Place
from pipelines._params import parameters


# fmt: off
@dsl.pipeline(name="dguard-diagnose", description="Measure the distillation traps of a teacher/student pair.")
@parameters
def diagnose_pipeline(
    teacher: str,
    student: str,
    task: str,
    source: str,
    data_seed: int,
    prep_options: dict,
    limit: int,
    diagnose_options: dict,
    store_root: str, s3_secret: str, env_config_map: str, image: str, gpu_image: str, accelerator_type: str,
    accelerator_count: int, num_nodes: int, trainer_runtime: str, gpu_node_selector: dict, gpu_tolerations: list, light_cpu_request: str,
    light_cpu_limit: str, light_memory_request: str, light_memory_limit: str, gpu_cpu_request: str,
    gpu_cpu_limit: str, gpu_memory_request: str, gpu_memory_limit: str,
) -> str:
    at = Place(locals())
    pinned = at.light(pin_models(teacher=teacher, proxies=[], student=student, store_root=store_root), False)
    data = at.light(prep(task=task, source=source, seed=data_seed, options=prep_options, store_root=store_root),
                    False)
    d = diagnose(teacher=pinned.outputs["teacher"], student=pinned.outputs["student"], dataset=data.outputs["Output"],
                 limit=limit, options=diagnose_options, store_root=store_root)
    return at.gpu(d).outputs["Output"]
# fmt: on

PIPELINE = diagnose_pipeline
