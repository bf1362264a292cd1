"""The VM's definition: disk preparation, SyncVirtualMachine, STANDALONE_VMI, the KVM probe,
the domain XML diff (the VMI -> XML converter itself is launcher.converter)."""
