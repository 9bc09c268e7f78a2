"""Schema revisions, oldest first. The six written side by side in one release are chained
in this order (each revises the one before): 0007_volume, 0007_requests, 0007_itconsole,
0007_pupil, 0007_queue, 0007_reports; then 0008_partitions (PostgreSQL's access_log by
day, with its indexes as 0007 left them) and 0008_queries (which changes those indexes)."""
