"""Retention: what is due (:mod:`~eftgw.retention.policy`, pure, given the clock) apart from applying it
(:mod:`~eftgw.retention.purge` removes a case completely; :mod:`~eftgw.retention.worker` runs the sweep).

The rules: files are transferred only while a case is open; 30 days (``retention_days``) after the recorded
closure everything of the case is purged; a reopening before then cancels the purge, and a later closure
starts a new period; a case reopened after its purge is an open case with no files.
"""
