"""The shared folder: its files, their walk and reads, the journals."""
