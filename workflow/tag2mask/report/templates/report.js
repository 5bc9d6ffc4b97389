/* Marks the page once every picture has decoded, so that a headless browser can check it. */
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var bad = imgs.filter(function (i) { return !(i.complete && i.naturalWidth > 0); });
  document.documentElement.setAttribute('data-images-total', String(imgs.length));
  document.documentElement.setAttribute('data-images-loaded', bad.length ? 'missing' : 'all');
});
