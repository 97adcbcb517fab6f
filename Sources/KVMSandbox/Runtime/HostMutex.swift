#if canImport(Glibc)
import Glibc
#endif

/// A value behind a pthread mutex: the lock every shared structure of the library and the
/// server uses. (Not the standard library's `Mutex`: on Linux that one waits on futexes directly,
/// which ThreadSanitizer cannot see, so `Scripts/tsan` would report every access it guards.)
///
/// (@unchecked: `value` is only touched between `pthread_mutex_lock` and `_unlock` of `mutex`,
/// which is allocated here and freed in deinit, after the last user is gone.)
package final class HostMutex<Value>: @unchecked Sendable {
    // A lock that guards code rather than a value holds a `Bool`: with a zero-sized `Value`
    // (`HostMutex(())`) TSan takes the empty value's exclusivity accesses for accesses of the
    // object itself and reports races that are not there.
    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private var value: Value

    /// A mutex guarding `value`.
    package init(_ value: Value) {
        self.value = value
        pthread_mutex_init(mutex, nil)
    }

    deinit {
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
    }

    /// Runs `body` with the value, the lock held.
    package func withLock<Result, Failure: Error>(_ body: (inout Value) throws(Failure) -> Result) throws(Failure) -> Result {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return try body(&value)
    }

    /// Runs `body` with the value if the lock is free now; nil if another thread holds it.
    package func withLockIfAvailable<Result, Failure: Error>(_ body: (inout Value) throws(Failure) -> Result) throws(Failure) -> Result? {
        guard pthread_mutex_trylock(mutex) == 0 else { return nil }
        defer { pthread_mutex_unlock(mutex) }
        return try body(&value)
    }
}
