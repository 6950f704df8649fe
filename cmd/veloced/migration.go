package main

import (
	"flag"
	"fmt"
	"time"

	"github.com/veloce-io/veloce/backend"
)

// migrationFlagValues are the live-migration flags.
type migrationFlagValues struct {
	key, listen *string
	grace       *time.Duration
}

func migrationFlags(fs *flag.FlagSet) *migrationFlagValues {
	return &migrationFlagValues{
		key: fs.String("migration-key", "", "file with the migration key (32+ random bytes, raw or hex; mode 0400), the same on every daemon a VM may move between: "+
			"a daemon accepts a migrated guest's stream state only over a connection authenticated with it; default the --peer-key; without either, stream state neither leaves nor arrives"),
		listen: fs.String("migration-listen", "", "TCP address (HOST:PORT) to accept migrated guests' stream state at (velocectl migrate connects the source daemon to it); needs a migration key; empty: this daemon is no migration destination"),
		grace:  fs.Duration("migration-forward", 0, "how long a migration's source keeps forwarding messages that still reach it to the destination, after the VM moved; default 3s"),
	}
}

// apply puts the flags into opts; peerKey is --peer-key's file.
func (m *migrationFlagValues) apply(opts *backend.DaemonOptions, peerKey string) error {
	path := *m.key
	if path == "" {
		path = peerKey
	}
	if path != "" {
		key, err := backend.LoadPeerKey(path)
		if err != nil {
			return fmt.Errorf("--migration-key: %w", err)
		}
		opts.Migration.Key = key
	}
	if *m.listen != "" && opts.Migration.Key == nil {
		return fmt.Errorf("--migration-listen %s: give --migration-key FILE (or --peer-key): a destination accepts stream state only from daemons holding the key", *m.listen)
	}
	if *m.grace < 0 {
		return fmt.Errorf("--migration-forward %v: negative", *m.grace)
	}
	opts.Migration.Listen = *m.listen
	opts.Migration.ForwardGrace = *m.grace
	return nil
}
