# The codec chains of the Konecny runs (sourced by run_konecny.sh): inner layers = conv2 and fc1.
declare -A CODECS=(
  [none]='[]'
  [lowrank25]='[{name: lowrank, fraction: 0.25, layers: inner}]'
  [mask25]='[{name: mask, fraction: 0.25, layers: inner}]'
  [lowrank6]='[{name: lowrank, fraction: 0.0625, layers: inner}]'
  [mask6]='[{name: mask, fraction: 0.0625, layers: inner}]'
  [I_6_2bit]='[{name: subsample, fraction: 0.0625, layers: inner}, {name: quantize, bits: 2, layers: inner}]'
  [HD_6_2bit]='[{name: hadamard, layers: inner}, {name: subsample, fraction: 0.0625, layers: inner}, {name: quantize, bits: 2, layers: inner}]'
)
TUNED=(none lowrank25 mask25 lowrank6 mask6 I_6_2bit HD_6_2bit)
