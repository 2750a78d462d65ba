"""What every mode and command shares: ids, rows, the manifest, the state folder, the output."""
