"""Tasks: model factory + training objective + default energy. One file per family."""

from __future__ import annotations

from collections.abc import Callable

from ..errors import ConfigError
from .base import Task
from .cifar import cifar10_task, cifar10_vgg_task
from .controls import convex_task, permutation_task
from .gaussian_mixture import gaussian_mixture_task
from .kuditipudi_disconnected import kuditipudi_disconnected_task
from .linear import linear_ridge_task, linear_task
from .mnist import mnist_kuditipudi_task, mnist_mlp_task, mnist_task
from .polynomial import polynomial_task
from .ptb import ptb_task
from .teacher_student import teacher_student_task

__all__ = ["Task", "TASKS", "make_task", "polynomial_task", "convex_task", "permutation_task", "mnist_task",
           "mnist_kuditipudi_task", "mnist_mlp_task", "cifar10_task", "ptb_task"]

TASKS: dict[str, Callable[..., Task]] = {
    "quadratic": lambda **kw: polynomial_task("quadratic", **kw),
    "cubic": lambda **kw: polynomial_task("cubic", **kw),
    "convex": convex_task,
    "permutation": permutation_task,
    "kuditipudi-disconnected": kuditipudi_disconnected_task,
    "gaussian-mixture": gaussian_mixture_task,
    "mnist": mnist_task,
    "mnist-kuditipudi": mnist_kuditipudi_task,
    "mnist-mlp": mnist_mlp_task,
    "cifar10": cifar10_task,
    "cifar10-vgg": cifar10_vgg_task,
    "ptb": ptb_task,
    "teacher-student": teacher_student_task,
    "linear": linear_task,
    "linear-ridge": linear_ridge_task,
}


def make_task(name: str, **options) -> Task:
    """Build a task by name; options go to its factory (e.g. ``activation="relu"``)."""
    if name not in TASKS:
        raise ConfigError(f"unknown task {name!r}; choose one of: {', '.join(TASKS)}")
    try:
        return TASKS[name](**options)
    except TypeError as exc:
        raise ConfigError(f"task {name!r} does not take these options: {exc}") from None
