import CHost
#if canImport(Glibc)
import Glibc
#endif

/// The host's side of the vDSO's clocks: converts the time-stamp counter to the host's
/// CLOCK_MONOTONIC and CLOCK_REALTIME. One per process: the TSC rate is the machine's.
///
/// Only used when the host's TSC is invariant (`constant_tsc` and `nonstop_tsc` in
/// /proc/cpuinfo); elsewhere the vDSO is told to make system calls. The rate starts from
/// KVM's figure for the vCPU (`KVM_GET_TSC_KHZ`, kHz precision) or a 200 us calibration, and is
/// refined from the longest baseline this process has seen (its first sample to now), so its
/// error shrinks with the process's age; the guest's parameters are refreshed before every
/// entry, so what it computes never drifts for longer than one stretch without an exit.
final class TSCClock: Sendable {
    /// The one clock of this process.
    static let shared = TSCClock()

    /// Whether the host's TSC ticks at one rate in every state (else the vDSO is disabled).
    let invariant: Bool
    /// The first sample: TSC and CLOCK_MONOTONIC nanoseconds read together.
    private let start: (tsc: UInt64, monotonic: UInt64)
    /// Nanoseconds per tick times 2^32: KVM's or the calibration's, then the refined one.
    private let rate = HostMutex<UInt64>(0)

    private init() {
        invariant = Self.hostTSCIsInvariant()
        start = Self.sample()
    }

    /// CPUID's invariant-TSC bit (leaf 0x8000_0007, EDX bit 8), or the kernel's own verdict
    /// (`constant_tsc` and `nonstop_tsc` among the first CPU's flags in /proc/cpuinfo), which a
    /// hypervisor may give without the bit.
    private static func hostTSCIsInvariant() -> Bool {
        var registers: [UInt32] = [0, 0, 0, 0]
        chost_cpuid(0x8000_0000, 0, &registers)
        if registers[0] >= 0x8000_0007 {
            chost_cpuid(0x8000_0007, 0, &registers)
            if registers[3] & (1 << 8) != 0 { return true }
        }
        // /proc files report no size: read until the first "flags" line.
        let fd = open("/proc/cpuinfo", O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var text: [UInt8] = [], chunk = [UInt8](repeating: 0, count: 16384)
        while text.count < 1 << 20 {
            let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n <= 0 { break }
            text += chunk[..<n]
            if let line = String(decoding: text, as: UTF8.self).split(separator: "\n").first(where: { $0.hasPrefix("flags") }),
               text.contains(UInt8(ascii: "\n")), String(decoding: text, as: UTF8.self).contains(line + "\n") {
                let words = Set(line.split(separator: " "))
                return words.contains("constant_tsc") && words.contains("nonstop_tsc")
            }
        }
        return false
    }

    /// TSC and CLOCK_MONOTONIC (ns) read back to back, the TSC taken between two clock reads
    /// whose midpoint is used.
    static func sample() -> (tsc: UInt64, monotonic: UInt64) {
        var before = timespec(), after = timespec()
        clock_gettime(CLOCK_MONOTONIC, &before)
        let tsc = chost_rdtsc()
        clock_gettime(CLOCK_MONOTONIC, &after)
        let a = UInt64(before.tv_sec) &* 1_000_000_000 &+ UInt64(before.tv_nsec)
        let b = UInt64(after.tv_sec) &* 1_000_000_000 &+ UInt64(after.tv_nsec)
        return (tsc, a &+ (b &- a) / 2)
    }

    /// Nanoseconds per tick times 2^32, from `kilohertz` (KVM's figure for the vCPU, or nil).
    func multiplier(kilohertz: UInt64?) -> UInt64 {
        rate.withLock { rate in
            if rate == 0 {
                rate = kilohertz.map { $0 > 0 ? (1_000_000 << 32) / $0 : 0 } ?? 0
                if rate == 0 { rate = Self.calibrate() }
            }
            // A baseline past 100 ms measures the rate better than kHz precision: use it.
            let now = Self.sample()
            let elapsed = now.monotonic &- start.monotonic, ticks = now.tsc &- start.tsc
            if elapsed > 100_000_000, ticks > 0, now.tsc > start.tsc {
                let scaled = elapsed.multipliedFullWidth(by: 1 << 32)
                if scaled.high < ticks { rate = ticks.dividingFullWidth((scaled.high, scaled.low)).quotient }
            }
            return rate
        }
    }

    /// Nanoseconds per tick times 2^32, measured over 200 us.
    private static func calibrate() -> UInt64 {
        let first = sample()
        var last = first
        while last.monotonic &- first.monotonic < 200_000 { last = sample() }
        let ticks = max(1, last.tsc &- first.tsc)
        let scaled = (last.monotonic &- first.monotonic).multipliedFullWidth(by: 1 << 32)
        return scaled.high < ticks ? ticks.dividingFullWidth((scaled.high, scaled.low)).quotient : 1 << 32
    }
}

/// One VM's vDSO data page: where it is, how the vCPU's TSC relates to the host's, and what was
/// written last (so a refresh never moves CLOCK_MONOTONIC back). Refreshed by the vCPU thread
/// before every entry, while the guest is stopped: the guest never sees a half-written page.
struct GuestClockPage {
    /// The data page's guest-physical address.
    let physical: UInt64
    /// Guest TSC minus host TSC (KVM may offset a vCPU's TSC; PVM does not); nil until measured.
    private var offset: Int64?
    /// The vCPU's TSC rate in kHz, as KVM reports it (nil: not reported).
    private var kilohertz: UInt64?
    /// The parameters last written: TSC base, monotonic base, multiplier.
    private var last: (tsc: UInt64, monotonic: UInt64, multiplier: UInt64)?

    /// The page at guest-physical `physical`.
    init(physical: UInt64) { self.physical = physical }

    /// Writes fresh parameters (or `enabled = 0` when the host's TSC cannot serve) into
    /// `memory` for the guest on `vcpu`.
    mutating func refresh(vcpu: VirtualCPU, memory: GuestMemory, enabled wanted: Bool) {
        let clock = TSCClock.shared
        guard wanted, clock.invariant else {
            memory.store(UInt64(0), at: physical + VDSO.DataLayout.enabled)
            return
        }
        if offset == nil {
            // The vCPU's TSC against ours, read between two of ours.
            let before = chost_rdtsc()
            guard let guest = try? vcpu.msr(0x10) else {  // IA32_TIME_STAMP_COUNTER
                memory.store(UInt64(0), at: physical + VDSO.DataLayout.enabled)
                return
            }
            let after = chost_rdtsc()
            offset = Int64(bitPattern: guest &- (before &+ (after &- before) / 2))
            kilohertz = try? vcpu.tscKilohertz()
        }
        let multiplier = clock.multiplier(kilohertz: kilohertz)
        var realtime = timespec()
        let now = TSCClock.sample()
        clock_gettime(CLOCK_REALTIME, &realtime)
        let guestTSC = now.tsc &+ UInt64(bitPattern: offset ?? 0)
        var monotonic = now.monotonic
        if let last, guestTSC > last.tsc {
            // What the guest would compute now from the last parameters: never go below it.
            let product = (guestTSC &- last.tsc).multipliedFullWidth(by: last.multiplier)
            let extrapolated = last.monotonic &+ (product.high << 32 | product.low >> 32)
            monotonic = max(monotonic, extrapolated)
        }
        last = (guestTSC, monotonic, multiplier)
        memory.store(guestTSC, at: physical + VDSO.DataLayout.tscBase)
        memory.store(monotonic, at: physical + VDSO.DataLayout.monotonicBase)
        memory.store(UInt64(realtime.tv_sec) &* 1_000_000_000 &+ UInt64(realtime.tv_nsec), at: physical + VDSO.DataLayout.realtimeBase)
        memory.store(multiplier, at: physical + VDSO.DataLayout.multiplier)
        memory.store(UInt64(1), at: physical + VDSO.DataLayout.enabled)
    }
}
