"""FireWorks orchestration: FireTasks and workflow builders, recovery, the launcher supervisor, LaunchPad queries.
"""
