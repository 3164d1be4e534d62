"""Decisions: conformal thresholds, calibration records and flagging images."""
