"""Importing this module registers every built-in component."""

import fedloom.algorithms  # noqa: F401
import fedloom.codecs  # noqa: F401
import fedloom.data.datasets  # noqa: F401
import fedloom.data.partition  # noqa: F401
import fedloom.data.target_labels  # noqa: F401
import fedloom.data.text  # noqa: F401
import fedloom.engine  # noqa: F401
import fedloom.models  # noqa: F401
import fedloom.models.tasks  # noqa: F401
import fedloom.rl  # noqa: F401  (actor_critic model, cartpole/acrobot/pendulum/... environments)
import fedloom.schedules  # noqa: F401
