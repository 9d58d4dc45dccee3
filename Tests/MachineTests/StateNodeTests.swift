import Testing
@testable import Machine

@Suite("StateNode: typed properties, big-endian, validated getters")
struct StateNodeTests {
    @Test("integers are stored big-endian at their own width and read back")
    func integers() throws {
        var n = StateNode(name: "dev")
        n.set("u8", UInt8(0xab))
        n.set("u16", UInt16(0x0102))
        n.set("u32", UInt32(0x0102_0304))
        n.set("u64", UInt64(0x0102_0304_0506_0708))
        n.set("i32", Int32(-2))
        n.set("i64", Int64.min)
        #expect(try n.bytes("u8") == [0xab])
        #expect(try n.bytes("u16") == [1, 2])
        #expect(try n.bytes("u32") == [1, 2, 3, 4])
        #expect(try n.bytes("u64") == [1, 2, 3, 4, 5, 6, 7, 8])
        #expect(try n.bytes("i32") == [0xff, 0xff, 0xff, 0xfe])
        #expect(try n.integer("u8", as: UInt8.self) == 0xab)
        #expect(try n.integer("u16", as: UInt16.self) == 0x0102)
        #expect(try n.integer("u32", as: UInt32.self) == 0x0102_0304)
        #expect(try n.integer("u64", as: UInt64.self) == 0x0102_0304_0506_0708)
        #expect(try n.integer("i32", as: Int32.self) == -2)
        #expect(try n.integer("i64", as: Int64.self) == Int64.min)
        let typed: UInt64 = try n.integer("u64")
        #expect(typed == 0x0102_0304_0506_0708)
    }

    @Test("one-byte signed integers with the top bit set read back (no trap on 0x80…0xff)")
    func signedByte() throws {
        var n = StateNode(name: "dev")
        n.set("i8", Int8(-1))
        n.set("a", array: [Int8(-128), 127])
        #expect(try n.integer("i8", as: Int8.self) == -1)
        #expect(try n.array("a", of: Int8.self) == [-128, 127])
    }

    @Test("a property of the wrong size is refused, naming node, property and both sizes")
    func wrongSize() throws {
        var n = StateNode(name: "vcpu@0")
        n.set("x", UInt16(7))
        #expect(throws: StateError.badSize(node: "vcpu@0", property: "x", expected: 4, got: 2)) {
            try n.integer("x", as: UInt32.self)
        }
        #expect(throws: StateError.badSize(node: "vcpu@0", property: "x", expected: 1, got: 2)) {
            try n.integer("x", as: UInt8.self)
        }
        #expect(throws: StateError.badSize(node: "vcpu@0", property: "x", expected: 4, got: 2)) { try n.bool("x") }
        n.set("odd", bytes: [1, 2, 3])
        #expect(throws: StateError.badSize(node: "vcpu@0", property: "odd", expected: 2, got: 3)) {
            try n.array("odd", of: UInt16.self)
        }
        #expect(StateError.badSize(node: "vcpu@0", property: "x", expected: 4, got: 2).description
                == "state of vcpu@0: 'x' is 2 bytes, expected 4")
    }

    @Test("a missing property is refused by every getter, naming node and property")
    func missing() {
        let n = StateNode(name: "serial@3f8", properties: [("present", [0, 0, 0, 1])])
        let expected = StateError.missing(node: "serial@3f8", property: "absent")
        #expect(throws: expected) { try n.bytes("absent") }
        #expect(throws: expected) { try n.integer("absent", as: UInt32.self) }
        #expect(throws: expected) { try n.bool("absent") }
        #expect(throws: expected) { try n.string("absent") }
        #expect(throws: expected) { try n.array("absent", of: UInt64.self) }
        #expect(n.optionalBytes("absent") == nil)
        #expect(n.optionalBytes("present") == [0, 0, 0, 1])
        #expect(expected.description == "state of serial@3f8 lacks 'absent'")
        #expect(StateError.invalid(node: "n", reason: "why").description == "state of n is invalid: why")
    }

    @Test("bools are u32 cells; any non-zero cell is true")
    func bools() throws {
        var n = StateNode(name: "n")
        n.set("t", true)
        n.set("f", false)
        #expect(try n.bytes("t") == [0, 0, 0, 1])
        #expect(try n.bytes("f") == [0, 0, 0, 0])
        #expect(try n.bool("t"))
        #expect(try !n.bool("f"))
        n.set("two", bytes: [0, 0, 2, 0])
        #expect(try n.bool("two"))
    }

    @Test("strings are NUL-terminated on the way in; the getter drops one NUL and accepts none")
    func strings() throws {
        var n = StateNode(name: "n")
        n.set("s", string: "vol0")
        #expect(try n.bytes("s") == Array("vol0\0".utf8))
        #expect(try n.string("s") == "vol0")
        n.set("raw", bytes: Array("abc".utf8))
        #expect(try n.string("raw") == "abc")
        n.set("empty", string: "")
        #expect(try n.string("empty") == "")
        n.set("utf8", string: "dïsk")
        #expect(try n.string("utf8") == "dïsk")
    }

    @Test("arrays are concatenated big-endian elements")
    func arrays() throws {
        var n = StateNode(name: "n")
        n.set("a", array: [UInt32(1), 0xdead_beef])
        #expect(try n.bytes("a") == [0, 0, 0, 1, 0xde, 0xad, 0xbe, 0xef])
        #expect(try n.array("a", of: UInt32.self) == [1, 0xdead_beef])
        #expect(try n.array("a", of: UInt16.self) == [0, 1, 0xdead, 0xbeef])
        n.set("e", array: [UInt64]())
        #expect(try n.bytes("e") == [])
        #expect(try n.array("e", of: UInt64.self) == [])
        n.set("w", array: [UInt64.max, 0x0102_0304_0506_0708])
        #expect(try n.array("w", of: UInt64.self) == [UInt64.max, 0x0102_0304_0506_0708])
    }

    @Test("setting a key again replaces its value in place; children are found by name")
    func replaceAndChildren() throws {
        var n = StateNode(name: "root")
        n.set("a", UInt32(1))
        n.set("b", UInt32(2))
        n.set("a", UInt32(3))
        #expect(n.properties.map(\.0) == ["a", "b"])
        #expect(try n.integer("a", as: UInt32.self) == 3)

        n.children = [StateNode(name: "vcpu@0"), StateNode(name: "vcpu@1", properties: [("id", [1])])]
        #expect(n.child("vcpu@1")?.properties.first?.1 == [1])
        #expect(n.child("vcpu@2") == nil)
    }

    @Test("equality compares name, properties in order, and children")
    func equality() {
        let a = StateNode(name: "n", properties: [("x", [1]), ("y", [2])], children: [StateNode(name: "c")])
        #expect(a == StateNode(name: "n", properties: [("x", [1]), ("y", [2])], children: [StateNode(name: "c")]))
        #expect(a != StateNode(name: "m", properties: [("x", [1]), ("y", [2])], children: [StateNode(name: "c")]))
        #expect(a != StateNode(name: "n", properties: [("y", [2]), ("x", [1])], children: [StateNode(name: "c")]))
        #expect(a != StateNode(name: "n", properties: [("x", [1]), ("y", [3])], children: [StateNode(name: "c")]))
        #expect(a != StateNode(name: "n", properties: [("x", [1]), ("z", [2])], children: [StateNode(name: "c")]))
        #expect(a != StateNode(name: "n", properties: [("x", [1])], children: [StateNode(name: "c")]))
        #expect(a != StateNode(name: "n", properties: [("x", [1]), ("y", [2])], children: [StateNode(name: "d")]))
        #expect(a != StateNode(name: "n", properties: [("x", [1]), ("y", [2])]))
    }
}
