import KVMSandbox
import CKVM

/// The capabilities `kvmsandbox doctor` reports.
public enum KVMCapabilityReport {
    /// Name and `KVM_CHECK_EXTENSION` value of each capability the sandbox uses or will use.
    public static func values(_ system: KVMSystem) -> [(String, Int32)] {
        [("KVM_CAP_SYNC_REGS", KVM_CAP_SYNC_REGS), ("KVM_CAP_IMMEDIATE_EXIT", KVM_CAP_IMMEDIATE_EXIT),
         ("KVM_CAP_USER_MEMORY", KVM_CAP_USER_MEMORY), ("KVM_CAP_READONLY_MEM", KVM_CAP_READONLY_MEM),
         ("KVM_CAP_DIRTY_LOG_RING", KVM_CAP_DIRTY_LOG_RING), ("KVM_CAP_NR_MEMSLOTS", KVM_CAP_NR_MEMSLOTS),
         ("KVM_CAP_EXCEPTION_PAYLOAD", KVM_CAP_EXCEPTION_PAYLOAD)]
            .map { ($0.0, system.checkExtension($0.1)) }
    }
}
