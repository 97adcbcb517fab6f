/// Where things live in the guest's virtual address space (x86-64, lower canonical half).
///
/// ```
/// 0x0000_0000_0000  page 0: never mapped (null pointers fault)
/// 0x0000_0040_0000  ELF image (ET_EXEC at its own addresses; static-PIE loaded here)
///    ...            heap (brk), growing up from the end of the image
///    ...            anonymous mmap regions, growing down from below the stack
/// stackTop-size     stack (RW, NX); the page below it is an unmapped guard page
/// 0x7ff0_0000_1000  user stubs (read+execute, read-only): `syscall` on PVM, guest-call return
/// 0x7ff0_0000_2000  the exitless host-call mailbox (user read+write, NX; see `Mailbox`)
/// 0x7ff0_0000_3000  the MMIO doorbell (user write: leads past guest memory, every write exits)
/// 0x7ff0_0000_4000  parked VMs only: the parking page (user read+write, NX; see `ParkingStub`)
/// 0x7ff0_0000_5000  the CPL 0 exitless `syscall` entry (supervisor-only, read+execute; hardware
///                   KVM only uses it; see `ExitlessSyscallEntry`)
/// 0x7ff0_0000_6000  the vDSO (user read+execute): an ELF image whose `clock_gettime`,
///                   `gettimeofday`, `time` and `getcpu` run in the guest (`VDSO`)
/// 0x7ff0_0000_7000  the vDSO's clock data (user read-only, NX; the host refreshes it before
///                   every entry)
/// 0x7ff0_0010_0000  parked VMs only: the request arena (stack and request heap), an unmapped
///                   guard page below it
/// 0x7fff_ffff_9000  hardware KVM only, all supervisor-only with unmapped pages between:
///                   IST stack (#DF/NMI/#MC), CPL 0 stack (TSS.RSP0), exception stubs and the
///                   CPL 0 `syscall` entry (read+execute), IDT (read-only); see `ExceptionStubs`
/// 0x7fff_ffff_f000  GDT and TSS (supervisor-only, read-only: the guest cannot touch them)
/// ```
/// Page tables are in guest-physical pages that no virtual address maps.
public enum GuestLayout {
    /// The lowest address an ELF segment may use (page 0 stays unmapped).
    public static let lowestSegmentAddress: UInt64 = 0x1000
    /// Where a static-PIE (ET_DYN) program is loaded.
    public static let pieBase: UInt64 = 0x40_0000
    /// One past the highest stack byte.
    public static let stackTop: UInt64 = 0x7ff0_0000_0000
    /// Unmapped pages kept between the stack's guard page and the mmap region.
    public static let stackGap: UInt64 = 256 * PageSize.bytes
    /// Program segments must end below this address (leaves room for mmap and the stack).
    public static let imageLimit: UInt64 = 0x7000_0000_0000
    /// The page holding the `syscall` entry stub (MSR_LSTAR).
    public static let syscallStubPage: UInt64 = 0x7ff0_0000_1000
    /// The exitless host-call mailbox (user read+write, NX), shared with a host polling thread.
    public static let mailboxPage: UInt64 = 0x7ff0_0000_2000
    /// The MMIO doorbell: mapped to the guest-physical address just past guest memory, so a
    /// write there is an MMIO exit, served as a host call (an alternative trap to `out`).
    public static let doorbellPage: UInt64 = 0x7ff0_0000_3000
    /// Parked VMs: the page where the host posts requests to the idle stub (`ParkingStub`).
    public static let parkingPage: UInt64 = 0x7ff0_0000_4000
    /// The CPL 0 exitless `syscall` entry (hardware KVM), within RIP-relative reach of the mailbox.
    public static let kernelSyscallPage: UInt64 = 0x7ff0_0000_5000
    /// The vDSO image (`AT_SYSINFO_EHDR`), user read+execute.
    public static let vdsoPage: UInt64 = 0x7ff0_0000_6000
    /// The vDSO's clock parameters, user read-only, written by the host (`VDSO.DataLayout`).
    public static let vdsoDataPage: UInt64 = 0x7ff0_0000_7000
    /// Parked VMs: the start of the request arena (`ParkingConfiguration.arenaSize` bytes).
    public static let arenaBase: UInt64 = 0x7ff0_0010_0000
    /// Parked VMs: the largest arena.
    public static let maximumArenaSize: UInt64 = 64 << 20
    /// The page holding the GDT.
    public static let systemPage: UInt64 = 0x7fff_ffff_f000

    /// Where one fresh VM's stack, mmap region, heap and position-independent program start.
    /// `fixed` is the layout above; `random()` shifts each part by a random number of pages with
    /// Linux x86-64's default entropy (`randomize_va_space = 2`): the stack top down by up to
    /// 16 GiB (22 bits), the mmap region (and the dynamic loader in it) down by up to 1 TiB (28
    /// bits), the heap up by up to 32 MiB (13 bits), a PIE program up by up to 1 TiB (28 bits).
    struct Randomization: Codable, Equatable, Sendable {
        /// One past the highest stack byte.
        var stackTop: UInt64
        /// Extra unmapped bytes between the stack's gap and the top of the mmap region.
        var mmapShift: UInt64
        /// Unmapped bytes between the end of the program's image and the heap's start.
        var heapShift: UInt64
        /// Where a position-independent program's lowest page goes.
        var pieBase: UInt64

        /// No randomization: the same addresses in every run (`--no-aslr`, as `setarch -R`).
        static let fixed = Randomization(stackTop: GuestLayout.stackTop, mmapShift: 0, heapShift: 0, pieBase: GuestLayout.pieBase)

        /// A fresh random layout, from the host's `getrandom`.
        static func random() -> Randomization {
            var generator = SystemRandomNumberGenerator()
            func pages(_ bits: Int) -> UInt64 { UInt64.random(in: 0..<(1 << UInt64(bits)), using: &generator) << PageSize.shift }
            return Randomization(stackTop: GuestLayout.stackTop - pages(22), mmapShift: pages(28), heapShift: pages(13),
                                 pieBase: GuestLayout.pieBase + pages(28))
        }
    }

    /// Whether `[start, end)` touches one of the host's pages: the stubs, mailbox, doorbell,
    /// parking page and vDSO (`syscallStubPage` up to the request arena), or the supervisor-only
    /// area at the top (IST and CPL 0 stacks, stubs, IDT, GDT and TSS). The guest may not
    /// remap, unmap or reprotect them.
    static func overlapsHostPages(_ start: UInt64, _ end: UInt64) -> Bool {
        (start < arenaBase && end > syscallStubPage) || end > hostTop
    }

    /// The start of the supervisor-only area at the top of the address space.
    static let hostTop: UInt64 = 0x7fff_ffff_0000

    /// Whether `address` lies on the page that starts at `page`.
    static func page(_ page: UInt64, contains address: UInt64) -> Bool {
        address >= page && address - page < PageSize.bytes
    }
}
