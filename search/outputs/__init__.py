"""What a finished run gives its user: selection under a budget, the export bundle, report.html."""
