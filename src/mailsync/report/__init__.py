"""Reconciliation reports: what was missed or rejected, why, and what to do; and verify.

`build.build_report` is the entry point: `load` reads the store, `rules` gives each ledger
row its verdict (and who acts on it), `problems` groups the problem writes by recipient and
cause under the fixes that unblock most, `quarantine` shows kept-aside events without their
personal fields, and `frames` makes the other pandas tables of the `model.Report`; `names`
puts the config's names (and its time zone) on ids. `render` (JSON, CSV, markdown, files)
and `html` turn it into what people read, through `safe` (outside text made literal for
each format). `columns` names the tables' columns, `markdown` is the one markdown-table
helper, and `verify` reads HighLevel and Postalytics back for what the store cannot tell.
"""
