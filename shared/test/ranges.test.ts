// Address-range sanity: a pod's own addresses against what its intent takes over, and the
// webhook's ranges against the cluster's, each clash naming both ranges and the key to change.
import t from 'tap'
import { parseCidr, parseIntent, type Cidr } from '@ziti-cni/shared'
import { interceptRanges, podAddressClash, rangeClashes } from '../src/ranges.ts'

const PROXY = parseIntent('{"v":1,"mode":"proxy","uid":2171,"dnat":[{"dst":"100.64.0.2","proto":"tcp","port":5432,"to":15100},{"dst":"10.0.0.0/8","proto":"tcp","port":443,"to":15101}],"fence":[15100,15101]}')
const TPROXY = parseIntent('{"v":1,"mode":"tproxy","uid":2171,"cidrs":["100.64.0.0/10","fd00:ffff::/64"],"proto":["tcp"],"to":15001,"datapath":"ebpf","fence":[15001]}')
const TUN = parseIntent('{"v":1,"mode":"tun","uid":2171,"dev":"ziti0","addr":"100.64.0.1/10","routes":["10.99.0.0/16"]}')
const c = (s: string) => parseCidr(s) as Cidr

t.test('what each mode takes over', async (t) => {
  t.same(interceptRanges(PROXY).map((r) => r.what), ['a proxy alias address'], 'aliases; a service\'s own range is its owner\'s choice, taken over on its ports only')
  t.same(interceptRanges(TPROXY).map((r) => r.key), ['annotation cni.openziti.io/intercept-cidrs or webhook config tproxy.defaultCidrs', 'annotation cni.openziti.io/intercept-cidrs or webhook config tproxy.defaultCidrs'])
  t.same(interceptRanges(TUN).map((r) => `${r.what} ${r.key}`), ['the tun device\'s network webhook config tun.addr', 'a route into the tun device annotation cni.openziti.io/intercept-cidrs or webhook config tun.routes'])
})

t.test('ADD: a pod inside its own intercepted range is named with both ranges and the key', async (t) => {
  // EKS custom networking: pods in 100.64.0.0/10 (a secondary CGNAT CIDR of the VPC).
  t.equal(podAddressClash(TPROXY, ['100.64.3.7']), 'the pod\'s address 100.64.3.7 (from the primary CNI\'s result) lies inside the tproxy intercept range 100.64.0.0/10: the pod\'s own traffic would be taken over. Move it with annotation cni.openziti.io/intercept-cidrs or webhook config tproxy.defaultCidrs, or give pods addresses outside it')
  t.match(podAddressClash(TPROXY, ['10.0.1.5', 'fd00:ffff::5']), /fd00:ffff::5 .* fd00:ffff::\/64/, 'IPv6 too, whichever address clashes')
  t.match(podAddressClash(TUN, ['100.127.255.254']), /the tun device's network 100\.64\.0\.0\/10.*webhook config tun\.addr/)
  t.match(podAddressClash(TUN, ['10.99.4.4']), /a route into the tun device 10\.99\.0\.0\/16/)
  t.match(podAddressClash(PROXY, ['100.64.0.2']), /a proxy alias address 100\.64\.0\.2\/32.*proxy\.aliasRange/)
  t.equal(podAddressClash(PROXY, ['10.1.2.3']), undefined, 'inside a service range: allowed (only its ports are taken over)')
  t.equal(podAddressClash(PROXY, ['100.64.0.3']), undefined, 'an alias address nobody uses: fine')
  t.equal(podAddressClash(TPROXY, ['10.244.0.5', 'fd7a::5']), undefined)
  t.equal(podAddressClash(TPROXY, ['not-an-ip']), undefined, 'the primary\'s garbage is not ours to judge')
  t.equal(podAddressClash(TPROXY, []), undefined)
})

t.test('webhook start: our ranges against the cluster\'s', async (t) => {
  const ours = [{ cidr: c('100.64.0.0/10'), what: 'the proxy alias range', key: 'proxy.aliasRange' }]
  t.same(rangeClashes(ours, [{ cidr: c('100.64.0.0/16'), what: 'the cluster\'s pod network', key: 'clusterNetworks.podCidrs' }]), [
    'proxy.aliasRange: the proxy alias range 100.64.0.0/10 overlaps the cluster\'s pod network 100.64.0.0/16 (clusterNetworks.podCidrs); pods could not reach it. Choose a range outside it',
  ])
  t.same(rangeClashes(ours, [{ cidr: c('10.100.0.0/16'), what: 'the cluster\'s Service network', key: 'clusterNetworks.serviceCidrs' }, { cidr: c('fd00::/8'), what: 'v6', key: 'k' }]), [], 'disjoint, and families never clash')
})
