# Evaluates rendered NixOS modules WITHOUT nixpkgs: each module function is called with
# stub arguments and its attribute set is returned as data, for the tests to compare
# against tests/fixtures/nixos-options.json.
#
#   nix-instantiate --eval --strict --json tests/nix/eval-module.nix --argstr specJson '[...]'
#
# specJson: a JSON list of { "file": "/abs/path.nix", "packages": [ ["vim"], ["python3Packages", "requests"] ] }.
# The stubs are deliberately tiny: a template that starts using more of lib or a package
# that was not configured fails here with "attribute missing".
{ specJson }:
let
  specs = builtins.fromJSON specJson;

  # Just what nixgold's templates use, with nixpkgs' semantics.
  lib = {
    optional = cond: value: if cond then [ value ] else [ ];
    mkForce = content: { _type = "override"; priority = 50; inherit content; };
  };

  setPath = path: leaf:
    if path == [ ] then leaf else { ${builtins.head path} = setPath (builtins.tail path) leaf; };
  merge = a: b:
    a // builtins.mapAttrs
      (name: value: if builtins.isAttrs value && a ? ${name} && builtins.isAttrs a.${name} then merge a.${name} value else value)
      b;
  # A stub package is an attrset naming its own attribute path.
  stubPkgs = paths:
    builtins.foldl' (acc: path: merge acc (setPath path { _stubPackage = builtins.concatStringsSep "." path; })) { } paths;

  evalOne = spec:
    let
      result = (import spec.file) { config = { }; inherit lib; pkgs = stubPkgs (spec.packages or [ ]); };
    in
    # imports hold paths; JSON would copy them into the store, so keep their base names.
    result // (if result ? imports then { imports = map (p: baseNameOf (toString p)) result.imports; } else { });
in
map evalOne specs
