"""Tests, one module per project module, and the synthetic-month generator shared with the demo."""
