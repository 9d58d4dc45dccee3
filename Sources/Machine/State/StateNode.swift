/// A plain tree of named byte-string properties: how every piece of machine state (vCPUs,
/// irqchip, devices) is written down. The migration layer stores it as an FDT; each component
/// encodes its typed `State` into one and decodes (and validates) it back — see `Snapshottable`.
public struct StateNode: Sendable, Equatable {
    public var name: String
    public var properties: [(String, [UInt8])]
    public var children: [StateNode]

    /// The property holding a component state's format version (`ComponentState.version`).
    public static let versionKey = "version"

    public init(name: String, properties: [(String, [UInt8])] = [], children: [StateNode] = []) {
        self.name = name; self.properties = properties; self.children = children
    }

    public static func == (a: StateNode, b: StateNode) -> Bool {
        a.name == b.name && a.children == b.children && a.properties.count == b.properties.count
            && zip(a.properties, b.properties).allSatisfy { $0.0 == $1.0 && $0.1 == $1.1 }
    }

    // MARK: building

    public mutating func set(_ key: String, bytes: [UInt8]) {
        if let i = properties.firstIndex(where: { $0.0 == key }) { properties[i].1 = bytes } else { properties.append((key, bytes)) }
    }
    /// Integers are stored big-endian, as FDT cells are.
    public mutating func set<T: FixedWidthInteger>(_ key: String, _ value: T) {
        set(key, bytes: withUnsafeBytes(of: value.bigEndian) { Array($0) })
    }
    public mutating func set(_ key: String, _ value: Bool) { set(key, UInt32(value ? 1 : 0)) }
    public mutating func set(_ key: String, string: String) { set(key, bytes: Array(string.utf8) + [0]) }
    public mutating func set<T: FixedWidthInteger>(_ key: String, array: [T]) {
        var out: [UInt8] = []
        out.reserveCapacity(array.count * MemoryLayout<T>.size)
        for v in array { withUnsafeBytes(of: v.bigEndian) { out.append(contentsOf: $0) } }
        set(key, bytes: out)
    }

    public func child(_ name: String) -> StateNode? { children.first { $0.name == name } }

    // MARK: reading (every getter validates; state is untrusted)

    public func bytes(_ key: String) throws(StateError) -> [UInt8] {
        guard let p = properties.first(where: { $0.0 == key }) else { throw .missing(node: name, property: key) }
        return p.1
    }
    public func optionalBytes(_ key: String) -> [UInt8]? { properties.first { $0.0 == key }?.1 }

    public func integer<T: FixedWidthInteger>(_ key: String, as: T.Type = T.self) throws(StateError) -> T {
        let b = try bytes(key)
        guard b.count == MemoryLayout<T>.size else {
            throw .badSize(node: name, property: key, expected: MemoryLayout<T>.size, got: b.count)
        }
        var v: T = 0
        for x in b { v = (v << 8) | T(truncatingIfNeeded: x) }
        return v
    }
    public func bool(_ key: String) throws(StateError) -> Bool { try integer(key, as: UInt32.self) != 0 }
    public func string(_ key: String) throws(StateError) -> String {
        var b = try bytes(key)
        if b.last == 0 { b.removeLast() }
        return String(decoding: b, as: UTF8.self)
    }
    public func array<T: FixedWidthInteger>(_ key: String, of: T.Type = T.self) throws(StateError) -> [T] {
        let b = try bytes(key)
        let w = MemoryLayout<T>.size
        guard b.count % w == 0 else { throw .badSize(node: name, property: key, expected: w, got: b.count) }
        return stride(from: 0, to: b.count, by: w).map { i in
            var v: T = 0
            for x in b[i..<(i + w)] { v = (v << 8) | T(truncatingIfNeeded: x) }
            return v
        }
    }
}

/// Why a state node could not be turned back into a device.
public enum StateError: Error, Equatable, CustomStringConvertible {
    case missing(node: String, property: String)
    case badSize(node: String, property: String, expected: Int, got: Int)
    case invalid(node: String, reason: String)
    /// The node was written by a newer swiftvmm whose format this one does not know.
    case unsupportedVersion(node: String, version: UInt32, known: UInt32)
    /// The live component could not produce or take its state (a KVM call failed).
    case unavailable(node: String, reason: String)

    public var description: String {
        switch self {
        case .unsupportedVersion(let n, let v, let k):
            return "state of \(n) has format version \(v); this swiftvmm reads up to version \(k)"
        case .unavailable(let n, let r): return "state of \(n): \(r)"
        case .missing(let n, let p): return "state of \(n) lacks '\(p)'"
        case .badSize(let n, let p, let e, let g): return "state of \(n): '\(p)' is \(g) bytes, expected \(e)"
        case .invalid(let n, let r): return "state of \(n) is invalid: \(r)"
        }
    }
}
