package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/popvmm/popvmm/cluster"
	"github.com/popvmm/popvmm/internal/diskimage"
)

// diskCmd is `popvmm disk`: disk images for [[kernel.disk]] (docs/storage.md).
func (c *cli) diskCmd() *cobra.Command {
	disk := &cobra.Command{
		Use:   "disk",
		Short: "Make disk images for [[kernel.disk]] (docs/storage.md)",
		Args:  exactArgs(),
		RunE: func(cmd *cobra.Command, args []string) error {
			cmd.Help()
			return usageErr("%s wants a subcommand (pack)", cmd.CommandPath())
		},
	}
	disk.AddCommand(c.diskPackCmd())
	return disk
}

func (c *cli) diskPackCmd() *cobra.Command {
	var size, label string
	var force bool
	cmd := &cobra.Command{
		Use:   "pack DIR IMAGE",
		Short: "Make an ext4 image of DIR (mkfs.ext4 -d), sized from its content, to attach to kernels",
		Long: `Make IMAGE, an ext4 file system holding DIR's files (owners, modes, symlinks
as they are), with mkfs.ext4 -d. Without --size the image is DIR's content
plus a fifth, with room for a quarter more files. Attach it read-only to any
number of kernels:

  [[kernel.disk]]
  path = "IMAGE"
  read_only = true

The kernel sees it as /dev/vdX (docs/storage.md).`,
		Args: exactArgs("DIR", "IMAGE"),
		RunE: func(cmd *cobra.Command, args []string) error {
			o := diskimage.Options{Label: label, Force: force}
			if size != "" {
				n, err := cluster.ParseSize(size)
				if err != nil {
					return usageErr("--size: %v", err)
				}
				o.Size = n
			}
			r, err := diskimage.Pack(args[0], args[1], o)
			if err != nil {
				return err
			}
			fmt.Fprintf(c.stdout, "%s: %d MiB ext4, %d files from %s\n", r.Image, r.Size>>20, r.Content.Files, args[0])
			return nil
		},
	}
	cmd.Flags().StringVar(&size, "size", "", "image size (e.g. 512M, 2G; default: from DIR's content)")
	cmd.Flags().StringVar(&label, "label", "", "file-system label (at most 16 bytes)")
	cmd.Flags().BoolVar(&force, "force", false, "replace IMAGE if it exists")
	return cmd
}
