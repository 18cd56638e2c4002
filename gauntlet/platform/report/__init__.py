"""Reports: an evaluation run's results turned into tables, statistics, plots and an HTML page.

`python -m gauntlet.platform.report RUN` runs the `gauntlet report` command.
"""
