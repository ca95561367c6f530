"""The monthly lead list: top K after business filters, and its CRM export."""
