"""reports: tables and plots written atomically from results computed elsewhere."""
