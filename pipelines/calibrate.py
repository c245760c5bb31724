"""calibrate: turn the distillability knob on a teacher, measure it with the attack suite, gate and publish.

prep -> evaluate(original) -> calibrate(eta, beta, proxies) -> evaluate(calibrated) -> for each attack (probe
student x method x seed): distill from the original and from the calibrated teacher, evaluate both -> report
(trade-off table) -> gate -> publish (only when the gate passed). The `harden` sub-graph is shared with the
`reharden` pipeline. Parameter defaults and help come from the stage configs (pipelines/_params.py).
"""

# No `from __future__ import annotations`: kfp reads the real annotations of pipeline signatures.

from kfp import dsl

from components.calibrate.component import calibrate as calibrate_op
from components.distill.component import distill
from components.evaluate.component import evaluate
from components.gate.component import gate
from components.pin.component import pin_models
from components.plan.component import plan_attacks
from components.prep.component import prep
from components.publish.component import publish, reject, reject_calibration
from components.report.component import report
from components.train.component import train
from pipelines import _k8s
from pipelines._k8s import Place, renamed
from pipelines._params import parameters, stage_default

evaluate_teacher = renamed(evaluate, "evaluate-teacher")
evaluate_floor = renamed(evaluate, "evaluate-floor")


# fmt: off
@dsl.pipeline(name="dguard-judge", description="Attack suite against original and calibrated teacher, report, gate, publish.")
@parameters(defaults=False)
def judge(
    attacks: list[dict],
    original: str,
    calibrated: str,
    calibration: str,
    dataset: str,
    teacher_original: dict,
    teacher_calibrated: dict,
    release: str,
    eta: float,
    attack_steps: int,
    attack_samples: int,
    attack_max_new_tokens: int,
    attack_batch_size: int,
    attack_lr: float,
    attack_limit: int,
    attack_options: dict,
    eval_split: str,
    eval_limit: int,
    eval_options: dict,
    min_retention: float,
    max_transfer: float,
    min_transfer: float,
    gate_aggregate: str,
    min_seeds: int,
    publish_model: bool,
    publish_to: str,
    releases_prefix: str,
    hardened_prefix: str,
    store_root: str, s3_secret: str, env_config_map: str, image: str, gpu_image: str, accelerator_type: str,
    accelerator_count: int, num_nodes: int, trainer_runtime: str, gpu_node_selector: dict, gpu_tolerations: list, light_cpu_request: str,
    light_cpu_limit: str, light_memory_request: str, light_memory_limit: str, gpu_cpu_request: str,
    gpu_cpu_limit: str, gpu_memory_request: str, gpu_memory_limit: str,
) -> str:
    at = Place(locals())
    with dsl.ParallelFor(attacks, parallelism=_k8s.OPTIONS.attack_parallelism) as a:
        records = {}
        for side, teacher in (("original", original), ("calibrated", calibrated)):
            d = distill(teacher=teacher, student=a.student, dataset=dataset, method=a.method, seed=a.seed,
                        reinit=a.reinit, steps=attack_steps, n_samples=attack_samples, max_new_tokens=attack_max_new_tokens,
                        batch_size=attack_batch_size, lr=attack_lr, limit=attack_limit, options=attack_options,
                        store_root=store_root, num_processes=accelerator_count,
                        num_nodes=num_nodes, trainer_runtime=trainer_runtime
                        ).set_display_name(f"distill from {side} teacher")
            e = evaluate(model=d.outputs["Output"], dataset=dataset, split=eval_split, limit=eval_limit,
                         role="student", teacher=side, student=a.student_name, method=a.method, seed=a.seed,
                         options=eval_options, store_root=store_root).set_display_name(f"evaluate student of {side}")
            for t in (d, e):
                at.gpu(t)
            records[side] = e
        floor = evaluate_floor(model=a.student, dataset=dataset, split=eval_split, limit=eval_limit,
                               role="student", teacher="floor", student=a.student_name, method="", seed=0,
                               options=eval_options, store_root=store_root).set_display_name("evaluate floor")
        at.gpu(floor)
    def collected(side):  # one Collected per consumer: the compiler does not share them
        return dsl.Collected(records[side].outputs["Output"])

    g = gate(teacher_original=teacher_original, teacher_calibrated=teacher_calibrated,
             students_original=collected("original"), students_calibrated=collected("calibrated"),
             model=calibrated, eta=eta, min_retention=min_retention,
             max_transfer=max_transfer, min_transfer=min_transfer, aggregate=gate_aggregate,
             min_seeds=min_seeds, store_root=store_root)
    # After the gate: the report opens with its verdict and reasons.
    r = report(teacher_original=teacher_original, teacher_calibrated=teacher_calibrated,
               students_original=collected("original"), students_calibrated=collected("calibrated"),
               floors=dsl.Collected(floor.outputs["Output"]), attack_steps=attack_steps, eta=eta,
               decision=g.outputs["decision"], store_root=store_root)
    for t in (r, g):
        at.light(t)
    # A single bool output (not a named one) keeps the condition resolvable by kfp.local too.
    with dsl.If(g.outputs["Output"] == True, name="gate-passed"):  # noqa: E712 - a KFP condition, not Python
        with dsl.If(publish_model == True, name="publish-enabled"):  # noqa: E712
            p = publish(model=calibrated, decision=g.outputs["decision"], calibration=calibration,
                        release=release, releases_prefix=releases_prefix, hardened_prefix=hardened_prefix,
                        dest=publish_to, store_root=store_root)
            at.light(p, False)
    with dsl.If(g.outputs["Output"] == False, name="gate-failed"):  # noqa: E712
        no = reject(decision=g.outputs["decision"], release=release, releases_prefix=releases_prefix,
                    hardened_prefix=hardened_prefix, store_root=store_root)
        at.light(no, False)
    return r.outputs["Output"]


@dsl.pipeline(name="dguard-harden", description="prep, calibrate a teacher, and judge it with the attack suite.")
@parameters(defaults=False)
def harden(
    teacher: str,
    proxies: list,
    release: str,
    teacher_sft_steps: int,
    teacher_sft_options: dict,
    task: str,
    source: str,
    data_seed: int,
    prep_options: dict,
    eta: float,
    beta: float,
    calibrate_steps: int,
    group_size: int,
    lr: float,
    calibrate_seed: int,
    calibrate_options: dict,
    eval_split: str,
    eval_limit: int,
    eval_options: dict,
    attack_students: list,
    attack_suite: list,
    attack_seeds: int,
    attack_steps: int,
    attack_samples: int,
    attack_max_new_tokens: int,
    attack_batch_size: int,
    attack_lr: float,
    attack_limit: int,
    attack_options: dict,
    min_retention: float,
    max_transfer: float,
    min_transfer: float,
    gate_aggregate: str,
    min_seeds: int,
    publish_model: bool,
    publish_to: str,
    releases_prefix: str,
    hardened_prefix: str,
    store_root: str, s3_secret: str, env_config_map: str, image: str, gpu_image: str, accelerator_type: str,
    accelerator_count: int, num_nodes: int, trainer_runtime: str, gpu_node_selector: dict, gpu_tolerations: list, light_cpu_request: str,
    light_cpu_limit: str, light_memory_request: str, light_memory_limit: str, gpu_cpu_request: str,
    gpu_cpu_limit: str, gpu_memory_request: str, gpu_memory_limit: str,
):
    at = Place(locals())
    data = at.light(prep(task=task, source=source, seed=data_seed, options=prep_options, store_root=store_root),
                    False)
    dataset = data.outputs["Output"]

    def teacher_eval(model, side):
        e = evaluate_teacher(model=model, dataset=dataset, split=eval_split, limit=eval_limit, role="teacher",
                     teacher=side, student="", method="", seed=0, options=eval_options, store_root=store_root)
        return at.gpu(e.set_display_name(f"evaluate {side} teacher"))

    # Optional bootstrap SFT of the teacher (0 steps: passes the teacher through; used for the zoo demo).
    boot = train(model=teacher, dataset=dataset, steps=teacher_sft_steps,
                 batch_size=stage_default("train", "batch_size"), lr=stage_default("train", "lr"),
                 options=teacher_sft_options, store_root=store_root,
                 num_processes=accelerator_count).set_display_name("bootstrap teacher")
    at.gpu(boot)
    teacher = boot.outputs["Output"]
    ev0 = teacher_eval(teacher, "original")
    cal = calibrate_op(teacher=teacher, proxies=proxies, dataset=dataset, eta=eta, beta=beta,
                       steps=calibrate_steps, group_size=group_size, lr=lr, seed=calibrate_seed,
                       options=calibrate_options, store_root=store_root, num_processes=accelerator_count,
                       num_nodes=num_nodes, trainer_runtime=trainer_runtime)
    at.gpu(cal)
    calibrated = cal.outputs["Output"]  # "" when calibration refused the teacher
    with dsl.If(calibrated != "", name="calibrated"):
        ev1 = teacher_eval(calibrated, "calibrated")
        plan = at.light(plan_attacks(students=attack_students, methods=attack_suite, seeds=attack_seeds,
                                     store_root=store_root), False)
        judge(attacks=plan.output, original=teacher, calibrated=calibrated,
              calibration=cal.outputs["calibration"], dataset=dataset,
              teacher_original=ev0.outputs["Output"], teacher_calibrated=ev1.outputs["Output"],
              release=release, eta=eta, attack_steps=attack_steps, attack_samples=attack_samples,
              attack_max_new_tokens=attack_max_new_tokens, attack_batch_size=attack_batch_size,
              attack_lr=attack_lr, attack_limit=attack_limit, attack_options=attack_options,
              eval_split=eval_split, eval_limit=eval_limit, eval_options=eval_options,
              min_retention=min_retention, max_transfer=max_transfer, min_transfer=min_transfer,
              gate_aggregate=gate_aggregate, min_seeds=min_seeds, publish_model=publish_model,
              publish_to=publish_to, releases_prefix=releases_prefix, hardened_prefix=hardened_prefix,
              **at.args)
    with dsl.If(calibrated == "", name="calibration-refused"):
        refused = reject_calibration(calibration=cal.outputs["calibration"], release=release,
                                     releases_prefix=releases_prefix, hardened_prefix=hardened_prefix,
                                     store_root=store_root)
        at.light(refused, False)


@dsl.pipeline(
    name="dguard-calibrate",
    description="Calibrate a teacher's distillability (eta), measure it with an attack suite, gate and publish.",
)
@parameters
def calibrate_pipeline(
    teacher: str,
    proxies: list,
    teacher_sft_steps: int,
    teacher_sft_options: dict,
    task: str,
    source: str,
    data_seed: int,
    prep_options: dict,
    eta: float,
    beta: float,
    calibrate_steps: int,
    group_size: int,
    lr: float,
    calibrate_seed: int,
    calibrate_options: dict,
    eval_split: str,
    eval_limit: int,
    eval_options: dict,
    attack_students: list,
    attack_suite: list,
    attack_seeds: int,
    attack_steps: int,
    attack_samples: int,
    attack_max_new_tokens: int,
    attack_batch_size: int,
    attack_lr: float,
    attack_limit: int,
    attack_options: dict,
    min_retention: float,
    max_transfer: float,
    min_transfer: float,
    gate_aggregate: str,
    min_seeds: int,
    publish: bool,
    publish_to: str,
    store_root: str, s3_secret: str, env_config_map: str, image: str, gpu_image: str, accelerator_type: str,
    accelerator_count: int, num_nodes: int, trainer_runtime: str, gpu_node_selector: dict, gpu_tolerations: list, light_cpu_request: str,
    light_cpu_limit: str, light_memory_request: str, light_memory_limit: str, gpu_cpu_request: str,
    gpu_cpu_limit: str, gpu_memory_request: str, gpu_memory_limit: str,
):
    at = Place(locals())
    pinned = at.light(pin_models(teacher=teacher, proxies=proxies, student="", store_root=store_root), False)
    harden(teacher=pinned.outputs["teacher"], proxies=pinned.outputs["proxies"],
           release=pinned.outputs["teacher"], teacher_sft_steps=teacher_sft_steps,
           teacher_sft_options=teacher_sft_options, task=task, source=source, data_seed=data_seed,
           prep_options=prep_options, eta=eta, beta=beta, calibrate_steps=calibrate_steps, group_size=group_size,
           lr=lr, calibrate_seed=calibrate_seed, calibrate_options=calibrate_options, eval_split=eval_split,
           eval_limit=eval_limit, eval_options=eval_options, attack_students=attack_students,
           attack_suite=attack_suite, attack_seeds=attack_seeds, attack_steps=attack_steps,
           attack_samples=attack_samples, attack_max_new_tokens=attack_max_new_tokens,
           attack_batch_size=attack_batch_size, attack_lr=attack_lr, attack_limit=attack_limit,
           attack_options=attack_options, min_retention=min_retention,
           max_transfer=max_transfer, min_transfer=min_transfer, gate_aggregate=gate_aggregate,
           min_seeds=min_seeds, publish_model=publish, publish_to=publish_to, releases_prefix="",
           hardened_prefix="", **at.args)
# fmt: on

PIPELINE = calibrate_pipeline
