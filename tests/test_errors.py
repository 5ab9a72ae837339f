"""Errors out of task groups: the one aibatch error comes out plain, nothing is dropped."""

from __future__ import annotations

import anyio
import pytest

from aibatch.errors import CheckpointError, InputError, OutputError, plain_errors


async def fail(exc: BaseException) -> None:
    raise exc


async def group_raising(*errors: BaseException) -> None:
    async with anyio.create_task_group() as tg:
        for exc in errors:
            tg.start_soon(fail, exc)


async def test_one_aibatch_error_from_a_task_group_comes_out_plain():
    with pytest.raises(InputError, match="bad row"), plain_errors():
        await group_raising(InputError("in.csv", "bad row"))


async def test_two_aibatch_errors_come_out_as_the_first_with_the_second_as_a_note():
    with pytest.raises(OutputError) as caught, plain_errors():
        await group_raising(OutputError("disk full"), CheckpointError("lock lost"))

    assert caught.value.__notes__ == ["also: CheckpointError: lock lost"]


async def test_an_unrelated_exception_beside_an_aibatch_error_keeps_the_whole_group():
    with pytest.raises(ExceptionGroup) as caught, plain_errors():
        await group_raising(OutputError("disk full"), ZeroDivisionError("a bug"))

    kinds = {type(exc) for exc in caught.value.exceptions}
    assert kinds == {OutputError, ZeroDivisionError}
