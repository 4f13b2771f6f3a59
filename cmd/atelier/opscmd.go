package main

import "github.com/spf13/cobra"

// addOpsCommands registers the operations commands (init, doctor, update,
// deploy, backup, restore, uninstall, version, migrate, manager
// start|stop|restart|logs, config set) on the root, beside the existing
// manager and config commands.
func addOpsCommands(g *globals, root *cobra.Command) {
	root.AddCommand(newInitCmd(g), newDoctorCmd(g), newUninstallCmd(g), newVersionCmd(g), newMigrateCmd(g), newBackupCmd(g), newRestoreCmd(g), newUpdateCmd(g), newDeployCmd(g))
	for _, c := range root.Commands() {
		switch c.Name() {
		case "manager":
			c.AddCommand(newManagerServiceCmds(g)...)
		case "config":
			c.AddCommand(newConfigSetCmd(g))
		}
	}
}
