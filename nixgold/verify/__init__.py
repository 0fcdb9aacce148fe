"""`invoke verify`: choose the template, boot clones, run the check suite, report and clean up."""
