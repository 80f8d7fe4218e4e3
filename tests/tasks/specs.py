"""Small Python repositories with a real bug, their fix and their hidden tests.

Each builds into one R2E-Gym-Lite task (tests/tasks/build.py). Between them they cover what the
reward must get right: a parametrized test, a test expected to FAIL even at the fix, and a test
file that fails to import at the buggy commit; one repository has a pyproject.toml and setup.cfg.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TaskSpec:
    repo: str
    problem: str
    buggy: dict[str, str]  # path -> content at the buggy (parent) commit
    fixed: dict[str, str]  # path -> content the fix commit changes
    tests: dict[str, str]  # hidden tests, installed at /r2e_tests


CALC = TaskSpec(
    repo="calc",
    problem="`calc.add(2, 3)` returns -1 instead of 5: addition subtracts.",
    buggy={
        "calc/__init__.py": "from calc.ops import add, mul, sub\n",
        "calc/ops.py": (
            "def add(a, b):\n    return a - b\n\n\n"
            "def sub(a, b):\n    return a - b\n\n\n"
            "def mul(a, b):\n    return a * b\n"
        ),
        "README.md": "# calc\nTiny arithmetic helpers.\n",
    },
    fixed={
        "calc/ops.py": (
            "def add(a, b):\n    return a + b\n\n\n"
            "def sub(a, b):\n    return a - b\n\n\n"
            "def mul(a, b):\n    return a * b\n"
        ),
    },
    tests={
        "test_ops.py": (
            "import pytest\n\nfrom calc import add, mul, sub\n\n\n"
            "def test_add():\n    assert add(2, 3) == 5\n\n\n"
            "def test_sub():\n    assert sub(5, 3) == 2\n\n\n"
            '@pytest.mark.parametrize("a,b,expected", [(1, 2, 3), (0, 0, 0), (-1, 1, 0)])\n'
            "def test_add_many(a, b, expected):\n    assert add(a, b) == expected\n\n\n"
            "class TestMul:\n    def test_mul(self):\n        assert mul(2, 3) == 6\n"
        ),
    },
)

TEXTKIT = TaskSpec(
    repo="textkit",
    problem='`slugify("Hello World")` returns "Hello-World"; slugs must be lower case.',
    buggy={
        "textkit/__init__.py": "",
        "textkit/slug.py": (
            "import re\n\n\n"
            "def slugify(text):\n"
            '    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-")\n'
        ),
    },
    fixed={
        "textkit/slug.py": (
            "import re\n\n\n"
            "def slugify(text):\n"
            '    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()\n'
        ),
    },
    tests={
        "test_slug.py": (
            "from textkit.slug import slugify\n\n\n"
            'def test_lowercase():\n    assert slugify("Hello World") == "hello-world"\n\n\n'
            'def test_strip():\n    assert slugify("--a--") == "a"\n\n\n'
            "def test_translit():\n"
            '    assert slugify("Caf\\u00e9") == "cafe", "not transliterated yet"\n'
        ),
    },
)

STACKX = TaskSpec(
    repo="stackx",
    problem="`Stack().pop()` on an empty stack returns None; it should raise EmptyStackError.",
    buggy={
        "stackx/__init__.py": "from stackx.stack import Stack\n",
        "stackx/stack.py": (
            "class Stack:\n"
            "    def __init__(self):\n        self._items = []\n\n"
            "    def push(self, item):\n        self._items.append(item)\n\n"
            "    def pop(self):\n"
            "        if not self._items:\n            return None\n"
            "        return self._items.pop()\n\n"
            "    def __len__(self):\n        return len(self._items)\n"
        ),
        # Shared configuration files pytest also reads: an edit to their pytest sections is
        # tampering, any other edit is not (tests/test_tamper.py).
        "pyproject.toml": '[project]\nname = "stackx"\n',
        "setup.cfg": "[metadata]\nname = stackx\n",
    },
    fixed={
        "stackx/__init__.py": "from stackx.stack import EmptyStackError, Stack\n",
        "stackx/stack.py": (
            "class EmptyStackError(IndexError):\n    pass\n\n\n"
            "class Stack:\n"
            "    def __init__(self):\n        self._items = []\n\n"
            "    def push(self, item):\n        self._items.append(item)\n\n"
            "    def pop(self):\n"
            "        if not self._items:\n"
            '            raise EmptyStackError("pop from an empty stack")\n'
            "        return self._items.pop()\n\n"
            "    def __len__(self):\n        return len(self._items)\n"
        ),
    },
    tests={
        "test_stack.py": (
            "import pytest\n\nfrom stackx import EmptyStackError, Stack\n\n\n"
            "def test_push_pop():\n"
            "    stack = Stack()\n    stack.push(1)\n"
            "    assert stack.pop() == 1\n    assert len(stack) == 0\n\n\n"
            "def test_empty_pop_raises():\n"
            "    with pytest.raises(EmptyStackError):\n        Stack().pop()\n"
        ),
    },
)

ALL = (CALC, TEXTKIT, STACKX)
