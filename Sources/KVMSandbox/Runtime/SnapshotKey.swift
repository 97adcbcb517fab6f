import Crypto
import FoundationEssentials

/// A secret key that signs snapshot files (HMAC-SHA256) and verifies them when they are loaded
/// (`kvmsandbox snapshot --key FILE`, `serve --key FILE`). A snapshot file's plain checksum only
/// catches corruption; a keyed one also proves the file was written by a holder of the key, so a
/// file edited to widen its policy (a read-write grant of `/`) is refused.
public struct SnapshotKey: Sendable {
    let key: SymmetricKey

    /// The fewest and the most bytes a key may have.
    public static let minimumBytes = 16, maximumBytes = 4096

    /// A key of `bytes` (16 to 4,096 of them; 32 random bytes is the usual choice).
    public init(bytes: [UInt8]) throws(SnapshotFileError) {
        guard (Self.minimumBytes...Self.maximumBytes).contains(bytes.count) else {
            throw .io("a snapshot key must have \(Self.minimumBytes) to \(Self.maximumBytes) bytes, not \(bytes.count)")
        }
        key = SymmetricKey(data: bytes)
    }

    /// The key in the file at `path` (its raw bytes, e.g. `head -c 32 /dev/urandom > key`).
    public init(contentsOf path: String) throws(SnapshotFileError) {
        let bytes: [UInt8]
        do { bytes = try readFile(path, limit: Self.maximumBytes + 1) } catch {
            throw .io("cannot read the snapshot key \(path): \(error)")
        }
        try self.init(bytes: bytes)
    }

    /// The tag of `bytes`: 32 bytes of HMAC-SHA256.
    func tag(_ bytes: ArraySlice<UInt8>) -> [UInt8] {
        Array(HMAC<SHA256>.authenticationCode(for: bytes, using: key))
    }

    /// Whether `tag` is `bytes`' tag (compared in constant time).
    func verifies(_ tag: ArraySlice<UInt8>, of bytes: ArraySlice<UInt8>) -> Bool {
        HMAC<SHA256>.isValidAuthenticationCode(tag, authenticating: bytes, using: key)
    }

    /// Bytes of a tag.
    static let tagBytes = 32
}
