#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// A `Decodable` value a guest passes to a typed host function as JSON text: two argument
/// words, the address and the length in bytes (UTF-8, at most 16 MiB), as a C guest passes a
/// string (`ks_hostcall(n, json, strlen(json), ...)`). Text that is not JSON of the type's shape
/// is `-EINVAL` for the guest, before the function runs.
///
/// ```swift
/// struct Order: Decodable, Sendable { let item: String; let count: Int }
/// try sandbox.register(0x1002) { (order: JSONArgument<Order>, times: Int) -> Int in
///     order.value.count * times
/// }
/// ```
public struct JSONArgument<Value: Decodable & Sendable>: HostFunctionParameter {
    /// The decoded value.
    public let value: Value

    /// Two words: the address and the length.
    public static var words: Int { 2 }

    /// The value decoded from the JSON text at the address.
    public static func decode(_ call: HostCall, at index: Int) throws -> JSONArgument<Value> {
        let bytes = try [UInt8].decode(call, at: index)
        do {
            return JSONArgument(value: try JSONDecoder().decode(Value.self, from: Data(bytes)))
        } catch {
            throw HostCallFailure(HostCallErrno.EINVAL)
        }
    }
}
