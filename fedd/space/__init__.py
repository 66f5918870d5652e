"""Space accounting: the quota reporter, SRR and planned downtimes."""
