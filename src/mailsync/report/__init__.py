"""Reconciliation reports: what was missed or rejected, why, and what to do; and verify.

`build.build_report` is the entry point: `load` reads the store, `rules` gives each ledger
row its verdict, `frames` makes the pandas tables of the `model.Report`, and `render`
(JSON, CSV, markdown, files) and `html` turn it into what people read. `columns` names the
tables' columns, `markdown` is the one markdown-table helper, and `verify` reads HighLevel
and Postalytics back for what the store cannot tell.
"""
