"""Prefect blocks and what runs on them: Slack notices (`blocks.slack`), product publishing
(`blocks.publish`) and block registration from environment variables (`python -m blocks.register`).
"""
