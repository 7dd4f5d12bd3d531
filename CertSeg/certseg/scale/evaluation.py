"""`certseg evaluate --engine ray`: the protocol's certifications (image x configuration x sigma) on a Ray pool.

The driver computes the clean Dice and the tasks exactly as the one-process evaluation does (certseg.research.
evaluation.protocol); each worker loads the models once and certifies one task at a time, with the task's own noise seed,
so the rows equal the one-process rows for the same --seed.
"""

from __future__ import annotations

import functools

from certseg.scale.pool import ClusterSettings, TaskResult, connected, map_on_ray


def evaluate_on_ray(samples, models, requests, configurations, options, cluster: ClusterSettings,
                    progress: bool = True):
    from tqdm import tqdm

    from certseg.research.evaluation.protocol import certify_task, evaluate, evaluation_state_from_folder

    def run_tasks(tasks):
        bar = tqdm(total=len(tasks), desc="certifying", disable=not progress)

        def show(_: int, result: TaskResult) -> None:
            bar.update(1)

        make_state = functools.partial(evaluation_state_from_folder, options, list(configurations))
        with connected(cluster) as ray:
            results = map_on_ray(ray, make_state, certify_task, tasks, cluster, on_result=show)
        bar.close()
        lost = [index for index, result in enumerate(results) if result.value is None]
        if lost:
            from certseg.errors import CertSegError

            raise CertSegError(f"evaluate: the workers of {len(lost)} certifications died {cluster.max_attempts} times")
        return [result.value for result in results]

    return evaluate(samples, models, requests, configurations, options, progress=progress, run_tasks=run_tasks)
