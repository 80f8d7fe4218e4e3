"""Dataset -> tasks (scenario + grading spec) -> the tasks of each training step."""

from producer.schedule import Schedule
from producer.tasks import LoadedTasks, Task, load_rows, load_tasks, task_from_row

__all__ = ["LoadedTasks", "Schedule", "Task", "load_rows", "load_tasks", "task_from_row"]
