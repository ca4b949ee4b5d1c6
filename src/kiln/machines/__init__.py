"""Machines: images booted with systemd as PID 1 under systemd-nspawn.

contract   the runtime contract an image carries in its labels
config     config values given at launch: validated, rendered as env file and seed
folder     a machine's folder under $KILN_HOME/machines/<name> and its state file
process    the host processes that are a machine, and whether they still live
nspawn     the systemd-nspawn command line that boots one
volumes    state paths kept in folders outside the overlay
enter      running commands inside a machine (nsenter)
health     waiting for systemd and the image's health check
launch     kiln run
manage     kiln ps, stop, rm, exec, logs
converge   snapshots of a machine's files, and what changed between two
provision  applying a recipe's steps to a running machine
testing    kiln test
"""
