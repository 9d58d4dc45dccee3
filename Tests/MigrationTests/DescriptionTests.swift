import Testing
@testable import Machine
@testable import Migration

@Suite("machine description: the config section")
struct DescriptionTests {
    static let sample = MachineDescription(
        name: "guest-1", uuid: "6f1c0a52-9d3e-4b8a-a1f0-2c4d5e6f7a8b", vmmVersion: "0.1.0",
        memorySize: 5 << 30, cpus: 4,
        cpuid: [CPUIDEntry(function: 0, eax: 0xd, ebx: 0x6874_7541),
                CPUIDEntry(function: 1, eax: 0xa0f11, ebx: 0x0004_0800, ecx: 0xfeda_3203, edx: 0x178b_fbff),
                CPUIDEntry(function: 7, index: 0, flags: 1, ebx: 0x219c_95a9),
                CPUIDEntry(function: 7, index: 1, flags: 1, eax: 0x30),
                CPUIDEntry(function: 0x8000_0001, ecx: 0xffff_ffff, edx: 0x8000_0000)],
        devices: [.init(stateName: "serial@3f8", kind: .serial, volume: nil),
                  .init(stateName: "virtio-blk@0xd0000000", kind: .virtioBlock, volume: "root"),
                  .init(stateName: "virtio-net@0xd0001000", kind: .virtioNet, volume: nil)],
        tscKHz: 2_994_374)

    func decode(_ node: StateNode) throws(MigrationError) -> MachineDescription { try MachineDescription(node: node) }

    @Test("description → StateNode → FDT → StateNode → description is the identity")
    func roundTrip() throws {
        let blob = try FDTCodec.encode(Self.sample.stateNode)
        let back = try MachineDescription(node: try FDTCodec.decode(blob))
        #expect(back == Self.sample)
        #expect(back.devices.map(\.kind) == [.serial, .virtioBlock, .virtioNet])
        #expect(back.devices[1].volume == "root")
        let empty = MachineDescription(name: "", uuid: "", vmmVersion: "", memorySize: 16 << 20, cpus: 1,
                                       cpuid: [], devices: [], tscKHz: 0)
        #expect(try MachineDescription(node: try FDTCodec.decode(try FDTCodec.encode(empty.stateNode))) == empty)
    }

    @Test("the tree names the features it requires and stores numbers big-endian")
    func layout() throws {
        let n = Self.sample.stateNode
        #expect(try n.bytes("required-features") == Array("pages-v1\0state-v2\0".utf8))
        #expect(try n.bytes("memory-size") == [0, 0, 0, 1, 0x40, 0, 0, 0])
        #expect(try n.integer("cpus", as: UInt32.self) == 4)
        #expect(try n.array("cpuid", of: UInt32.self).count == 7 * Self.sample.cpuid.count)
        #expect(n.child("devices")?.children.map { $0.name } == ["device@0", "device@1", "device@2"])
    }

    @Test("a required feature this reader does not know is refused, naming it; unknown extras are ignored")
    func requiredFeatures() throws {
        var n = Self.sample.stateNode
        n.set("required-features", bytes: Array("pages-v1\0teleport-v9\0state-v2\0warp\0".utf8))
        #expect(throws: MigrationError.refused("the source requires stream features this swiftvmm lacks: teleport-v9, warp")) {
            try decode(n)
        }

        var newer = Self.sample.stateNode
        newer.set("future-knob", UInt64(42))
        newer.children.append(StateNode(name: "future-node", properties: [("x", [1])]))
        #expect(try decode(newer) == Self.sample)

        var none = Self.sample.stateNode
        none.properties.removeAll { $0.0 == "required-features" }
        #expect(try decode(none) == Self.sample)
    }

    @Test("vCPU counts outside 1…254 are refused")
    func cpuRange() throws {
        for cpus in [0, 255, 1000] as [UInt32] {
            var n = Self.sample.stateNode
            n.set("cpus", cpus)
            #expect(throws: MigrationError.refused("source has \(cpus) vCPUs, outside 1…254")) { try decode(n) }
        }
        for cpus in [1, 254] as [UInt32] {
            var n = Self.sample.stateNode
            n.set("cpus", cpus)
            #expect(try decode(n).cpus == Int(cpus))
        }
    }

    @Test("malformed configurations are stream errors: missing or mis-sized fields, bad CPUID table, device list")
    func malformed() throws {
        func expectMalformed(_ change: (inout StateNode) -> Void, _ what: String) {
            var n = Self.sample.stateNode
            change(&n)
            do throws(MigrationError) {
                _ = try decode(n)
                Issue.record("\(what) accepted")
            } catch {
                guard case .stream = error else { Issue.record("\(what): \(error)"); return }
            }
        }
        expectMalformed({ n in n.properties.removeAll { $0.0 == "name" } }, "missing name")
        expectMalformed({ $0.set("memory-size", UInt32(1)) }, "32-bit memory size")
        expectMalformed({ $0.set("cpus", UInt16(1)) }, "16-bit cpus")
        expectMalformed({ n in n.properties.removeAll { $0.0 == "cpuid" } }, "missing cpuid")
        expectMalformed({ $0.set("cpuid", array: [UInt32](repeating: 1, count: 8)) }, "cpuid not a multiple of 7 words")
        expectMalformed({ $0.set("cpuid", bytes: [1, 2, 3]) }, "cpuid not whole words")
        expectMalformed({ $0.children.removeAll() }, "missing device list")
        expectMalformed({ n in
            n.children = [StateNode(name: "devices", children: (0..<65).map {
                StateNode(name: "device@\($0)", properties: [("state-name", Array("serial@\($0)\0".utf8))])
            })]
        }, "65 devices")
        expectMalformed({ n in
            n.children = [StateNode(name: "devices", children: [StateNode(name: "device@0")])]
        }, "a device without a state name")
    }
}
