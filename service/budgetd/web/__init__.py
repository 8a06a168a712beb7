"""The admin budget page and the user's own view: server-rendered Jinja templates, uPlot
(vendored from npm, MIT, ``static/uPlot.LICENSE``) for the time charts, nothing fetched from
elsewhere."""
