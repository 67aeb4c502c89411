"""The reward functions a training job can name (``rewards.REWARD_FUNCTIONS``)."""

from fastapi import APIRouter

from rewards import REWARD_FUNCTIONS, describe
from schemas import RewardFunctionInfo, RewardFunctionList

router = APIRouter(tags=["reward functions"])


@router.get("/reward-functions", response_model=RewardFunctionList)
async def reward_functions() -> RewardFunctionList:
    return RewardFunctionList(
        reward_functions=[
            RewardFunctionInfo(
                name=name,
                description=describe(fn),
                observation_shape=_shape(getattr(fn, "observation_shape", None)),
            )
            for name, fn in REWARD_FUNCTIONS.items()
        ]
    )


def _shape(shape: tuple[int, ...] | None) -> list[int] | None:
    return list(shape) if shape is not None else None
