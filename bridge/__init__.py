"""CTI Bridge for Cisco Finesse: the server between CRM browsers and Finesse."""
