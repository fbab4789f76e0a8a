"""Pruning schedules (adaptive with zero-shot proxies, one-shot) and the proxies themselves."""

from entpruner_sdk.schedule.proxies import (
    LatencyModel,
    ntk_condition_number,
    rank,
    rank_vote,
    zico,
)
from entpruner_sdk.schedule.schedule import (
    SCHEDULES,
    Schedule,
    ScheduleConfig,
    SchedulePlan,
    ScheduleState,
)

__all__ = ["SCHEDULES", "LatencyModel", "Schedule", "ScheduleConfig", "SchedulePlan",
           "ScheduleState", "ntk_condition_number", "rank", "rank_vote", "zico"]
